from cumo.cli import main

main()
