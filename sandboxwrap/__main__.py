"""`python -m sandboxwrap`: same as the `sbx` command."""

from sandboxwrap.cli import main

if __name__ == "__main__":
    main(prog_name="sbx")
