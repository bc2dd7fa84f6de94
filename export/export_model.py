"""Export a model bundle to ONNX and ExecuTorch with parity checks (thin wrapper of ``imutune export``)."""
import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
