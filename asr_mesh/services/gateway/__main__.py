from asr_mesh.services.gateway.server import main

main()
