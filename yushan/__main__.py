from yushan.cli import main

main()
