from mrbench.cli.app import main

main()
