from seamline.cli.main import main

main()
