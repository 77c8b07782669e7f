from services.merge.server import main

main()
