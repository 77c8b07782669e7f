from asr_mesh.services.merge.server import main

main()
