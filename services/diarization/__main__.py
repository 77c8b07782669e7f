from services.diarization.server import main

main()
