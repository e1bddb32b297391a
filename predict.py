"""Compare two pictures of digits with a trained model.

    python predict.py <checkpoint> <first image> <second image>      # PNG or JPEG, any size, grey or colour
    python predict.py <checkpoint> --mnist-test 0 1                   # digits 0 and 1 of a source's test pool
    python predict.py <checkpoint> examples/two.png examples/seven_black_on_white.png --json

Prints one line, e.g. ``first: 2 (p=0.99)  second: 7 (p=0.98)  2 <= 7: yes (p=0.999)``;
with --json one object with the keys first, second, first_probs, second_probs, le, p_le.
A light background is inverted (noted on stderr). See digitpairs/inference/predict.py.
"""

import argparse
import json
import sys
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare two digit images with a trained digitpairs checkpoint: is first <= second?",
        epilog="example: python predict.py outputs/runs/<time>/checkpoints/last.ckpt "
        "examples/two.png examples/seven_black_on_white.png",
    )
    parser.add_argument("checkpoint", help="a checkpoint of a run (<run>/checkpoints/last.ckpt) or a run folder")
    parser.add_argument("images", nargs="*", metavar="image", help="the first and the second image (PNG or JPEG)")
    parser.add_argument(
        "--mnist-test",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        help="use test-pool digits I and J of --source instead of image files",
    )
    parser.add_argument("--source", default="auto", help="data source for --mnist-test (auto, idx, torchvision)")
    parser.add_argument(
        "--root",
        default="data/mnist",
        help="data folder for --mnist-test, relative to the project (default: data/mnist)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the human line")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    from digitpairs.utils.errors import ConfigError, exit_with
    from digitpairs.utils.io import project_path

    try:
        if args.mnist_test and args.images:
            raise ConfigError("image", " ".join(args.images), "no image files together with --mnist-test")
        if not args.mnist_test and len(args.images) != 2:
            raise ConfigError("image", " ".join(args.images) or "(none)", "two image files, or --mnist-test I J")
        from digitpairs.inference.predict import compare, human_line, load_digit, load_model, mnist_test_digit

        ckpt = Path(args.checkpoint)
        if ckpt.is_dir() and (ckpt / "checkpoints" / "last.ckpt").is_file():
            ckpt = ckpt / "checkpoints" / "last.ckpt"
        model, mean, std = load_model(str(ckpt))
        if args.mnist_test:
            digits = [mnist_test_digit(i, args.source, str(project_path(args.root))) for i in args.mnist_test]
        else:
            names = ("first_image", "second_image")
            digits = [load_digit(path, name) for path, name in zip(args.images, names, strict=True)]
    except ConfigError as err:
        exit_with(str(err), 2)
    for name, digit in zip(("first", "second"), digits, strict=False):
        if digit.inverted:
            print(f"note: the {name} image has a light background: inverted to a white digit on black", file=sys.stderr)
    result = compare(model, digits[0].image, digits[1].image, mean, std)
    print(json.dumps(result) if args.json else human_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
