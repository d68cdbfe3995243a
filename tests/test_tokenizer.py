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


def test_char_round_trips_hostile_text():
    text = "a\u0301 \U0001F600\U00010348 \r\n\x00\t\u2028\ufeff[MASK]"  # combining, beyond the BMP, CRLF, NUL
    tok = CharTokenizer.from_text(text).with_specials(("[PAD]", "[MASK]"))
    for s in (text, "", "\r\n\x00", "\U0001F600a\u0301", "[MASK]"):
        assert tok.decode(tok.encode(s)) == s
        assert from_meta(tok.meta()).decode(tok.encode(s, allow_specials=True)) == s
    assert len(tok.encode("\U0001F600a\u0301")) == 3  # one id per code point


def test_decode_refuses_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_text("abc").with_specials(("[PAD]",))
    assert tok.decode([0, 3, 2]) == "a[PAD]c"
    for bad in (-1, -100, 4):  # -1 read the last character, silently; 4 raised a bare IndexError
        with pytest.raises(TokenizerError, match=f"id {bad} .*0..3"):
            tok.decode([0, bad])
