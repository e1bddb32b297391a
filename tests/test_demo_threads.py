"""The demo's ``compare()`` from several threads at once: its test-time views come from a
generator of each call's own (``PairModule.forward_with``), never from torch's global one.

Needs no web server and no demo extra: the demo answers from Gradio's worker threads, and
``predict.compare`` is what each of them calls.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import PROJECT_ROOT

from digitpairs.data.augment import RandomDigitAffine
from digitpairs.inference.predict import compare, load_digit, load_model

EXAMPLES = PROJECT_ROOT / "examples"


@pytest.fixture(scope="module")
def beyond():
    """The shipped ``beyond`` model (16 test-time views) and two digits of the examples."""
    model, mean, std = load_model(str(PROJECT_ROOT / "pretrained" / "beyond" / "model.ckpt"))
    assert model.hparams.tta == 16
    digits = sorted(EXAMPLES.glob("*.png"))[:2]
    first, second = (load_digit(path, "digit").image for path in digits)
    return model, first, second, mean, std


def test_two_threads_get_the_answer_of_one(beyond):
    model, first, second, mean, std = beyond
    alone = compare(model, first, second, mean, std)
    state = torch.get_rng_state()
    answers: list[dict] = []
    start = threading.Barrier(2)

    def ask() -> None:
        start.wait()
        for _ in range(10):  # each call draws 16 views: ample time for the two threads to interleave
            answers.append(compare(model, first, second, mean, std))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 20
    assert [a for a in answers if a != alone] == []  # every answer exactly that of one thread alone
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from, or seeded in, the global generator


@pytest.mark.parametrize("same", [True, False])
def test_views_drawn_from_a_generator_are_kornias_draws(same):
    """A generator seeded as the global one draws the same maps as kornia's own sampling,
    bit for bit (evaluation with test-time views gives the numbers it always gave), and
    leaves the global generator as it was."""
    views = RandomDigitAffine(1.5, 12.0, 0.1)
    x = torch.rand(3, 2, 14, 14)
    torch.manual_seed(7)
    kornia_draws = views.draw(x, 0.5, same=same)
    state = torch.get_rng_state()
    own = views.draw(x, 0.5, same=same, generator=torch.Generator().manual_seed(7))
    assert torch.equal(own, kornia_draws)
    assert torch.equal(torch.get_rng_state(), state)
    again = views.draw(x, 0.5, same=same, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(again, own)
