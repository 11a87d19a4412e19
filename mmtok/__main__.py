from mmtok.cli import main

main()
