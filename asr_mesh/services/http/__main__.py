from asr_mesh.services.http.server import main

main()
