import sys

if sys.argv[1:2] == ["--plan-fd"]:
    # A prepared plan (sandbox.plan): the lean entry point, without argparse or attrs.
    from wrapperd.planned import main
    sys.exit(main(sys.argv[1:]))

from wrapperd.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
