import numpy as np
import pytest
import torch

from powerattn.tasks import exact_match, make_document, min_length, passkey_batch
from powerattn.tasks.passkey import HEADER, NEEDLE, QUESTION
from powerattn.training.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def test_tokenizer_round_trip_and_specials():
    ids = TOK.encode("pass key é", bos=True)
    assert ids[0] == TOK.bos_id and max(ids[1:]) < 256
    assert TOK.decode(ids) == "pass key é"
    assert TOK.vocab_size == 259


@pytest.mark.parametrize("seq_len", [min_length(), 300, 512, 1000])
def test_document_layout(seq_len):
    b = passkey_batch(seq_len, 6, np.random.default_rng(0), depths=np.linspace(0, 1, 6))
    assert b.input_ids.shape == (6, seq_len) and b.input_ids.dtype == torch.int64
    for i, key in enumerate(b.keys):
        text = TOK.decode(b.input_ids[i])
        assert len(key) == 5 and key[0] != "0"
        assert text.startswith(HEADER + " ")
        assert text.endswith(QUESTION + " " + key)
        assert NEEDLE.format(key=key) in text
        assert TOK.decode(b.answer_ids[i]) == key
        # Both statements of the key sit where key_positions says.
        assert TOK.decode(b.input_ids[i][b.key_positions[i].ravel()]) == key + key


def test_depth_places_the_needle_in_order():
    b = passkey_batch(2048, 5, np.random.default_rng(1), depths=[0.0, 0.25, 0.5, 0.75, 1.0])
    starts = b.key_positions[:, 0, 0]
    assert (np.diff(starts) > 0).all()
    assert b.depths[0] == 0.0 and abs(b.depths[2] - 0.5) < 0.05 and b.depths[-1] > 0.9
    # Depth 0: the needle directly follows the header.
    assert TOK.decode(b.input_ids[0][1 + len(HEADER) + 1 :][:15]) == "The pass key is"


def test_same_seed_same_batch_and_uniform_depths():
    a = passkey_batch(600, 8, np.random.default_rng(7))
    b = passkey_batch(600, 8, np.random.default_rng(7))
    c = passkey_batch(600, 8, np.random.default_rng(8))
    assert torch.equal(a.input_ids, b.input_ids) and a.keys == b.keys
    assert not torch.equal(a.input_ids, c.input_ids)


def test_exact_match():
    ans = torch.tensor([[1, 2, 3], [4, 5, 6]])
    pred = torch.tensor([[1, 2, 3], [4, 0, 6]])
    assert exact_match(pred, ans).tolist() == [True, False]
    with pytest.raises(ValueError, match="predicted"):
        exact_match(pred[:, :2], ans)


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="seq_len"):
        passkey_batch(min_length() - 1, 2, rng)
    with pytest.raises(ValueError, match="depth"):
        make_document(512, "12345", 1.5)
    with pytest.raises(ValueError, match="digits"):
        passkey_batch(512, 2, rng, digits=0)
    with pytest.raises(ValueError, match="batch_size"):
        passkey_batch(512, 0, rng)
    with pytest.raises(ValueError, match="depths"):
        passkey_batch(512, 2, rng, depths=[0.5])


def test_heldout_keys_are_a_hash_set_disjoint_from_training_keys():
    from powerattn.tasks.passkey import HELDOUT_EVERY, is_heldout_key

    every = np.arange(10_000, 100_000)
    held = is_heldout_key(every)
    assert abs(held.mean() - 1 / HELDOUT_EVERY) < 0.005
    # Not a digit rule: both sets hold every digit at every position.
    for pos in range(5):
        digit = (every // 10 ** (4 - pos)) % 10
        for d in range(1 if pos == 0 else 0, 10):
            assert held[digit == d].any() and (~held[digit == d]).any()
    rng = np.random.default_rng(0)
    ev = passkey_batch(400, 64, rng, keys="heldout")
    tr = passkey_batch(400, 64, rng, keys="train")
    assert is_heldout_key(np.array(ev.keys, dtype=np.int64)).all()
    assert not is_heldout_key(np.array(tr.keys, dtype=np.int64)).any()
    assert len(set(ev.keys)) > 50  # still random
    a = passkey_batch(400, 8, np.random.default_rng(5), keys="train")
    assert a.keys == passkey_batch(400, 8, np.random.default_rng(5), keys="train").keys
    with pytest.raises(ValueError, match="keys must be one of"):
        passkey_batch(400, 2, rng, keys="test")
