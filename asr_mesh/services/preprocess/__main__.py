from asr_mesh.services.preprocess.server import main

main()
