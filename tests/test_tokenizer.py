import pytest

from data.tokenizer import CharTokenizer, TokenizerError, from_meta


def test_char_round_trip_and_specials():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    ext = tok.with_specials(("[PAD]", "[MASK]"))
    assert ext.vocab_size == tok.vocab_size + 2
    assert ext.encode("hello") == tok.encode("hello")  # base ids never move
    ids = ext.encode("he[MASK]lo", allow_specials=True)
    assert ids[2] == ext.special_ids["[MASK]"] == tok.vocab_size + 1
    assert ext.decode(ids) == "he[MASK]lo"
    with pytest.raises(TokenizerError):
        ext.encode("he[MASK]lo")  # '[' is not a character of the corpus
    again = from_meta(ext.meta())
    assert again.encode("he[MASK]lo", allow_specials=True) == ids


def test_unknown_character_names_it():
    with pytest.raises(TokenizerError, match="'z'"):
        CharTokenizer.from_text("abc").encode("abz")
