from emu.cli.base import main

raise SystemExit(main())
