from asr_mesh.services.transcription.server import main

main()
