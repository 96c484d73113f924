"""Checks (or with --write, rewrites) the README's configuration reference against
`sluice config --reference`, so the documented options are exactly the option table."""
import argparse
import os
import subprocess
import sys

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default=os.environ.get("SLUICE_BIN", "sluice"))
    ap.add_argument("--readme", default=os.path.join(
        os.environ.get("SLUICE_TEST_SOURCE_DIR",
                       os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
        "README.md"))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    ref = subprocess.run([args.sluice, "config", "--reference"], check=True,
                         capture_output=True, text=True).stdout
    with open(args.readme) as f:
        text = f.read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    want = f"{head}{START}\n{ref}{END}{tail}"
    if text == want:
        print("README configuration reference is up to date")
        return 0
    if args.write:
        with open(args.readme, "w") as f:
            f.write(want)
        print("README configuration reference rewritten")
        return 0
    print("README.md's configuration reference differs from `sluice config --reference`;"
          " run scripts/gen-readme-config", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
