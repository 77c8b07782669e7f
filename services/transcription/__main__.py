from services.transcription.server import main

main()
