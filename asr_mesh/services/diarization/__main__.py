from asr_mesh.services.diarization.server import main

main()
