"""Make the example images from the real MNIST test set (t10k IDX files).

    python examples/make_examples.py [folder of the IDX files; default data/mnist]

two.png: test digit 1 (a 2), white on black; seven_black_on_white.png: test digit 0 (a
7), inverted to black on white. Both scaled from 28x28 to 112x112 (bilinear), so that
predict.py has to fit them back into the MNIST frame.
"""

import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def main(folder: Path) -> None:
    from digitpairs.data.sources import find_idx, read_idx

    images = read_idx(find_idx(folder, "t10k")[0]).numpy()
    for index, name, invert in ((1, "two.png", False), (0, "seven_black_on_white.png", True)):
        a = images[index]
        img = Image.fromarray(255 - a if invert else a, mode="L").resize((112, 112), Image.BILINEAR)
        img.save(HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "data" / "mnist")
