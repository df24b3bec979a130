import numpy as np
import pytest

from clipdesk.errors import QueryError
from clipdesk.query import combine, parse_query, query_vector


def test_plain_text_is_one_term():
    terms = parse_query("a dog in the snow")
    assert [(t.weight, t.text) for t in terms] == [(1.0, "a dog in the snow")]


def test_weighted_terms_and_negatives():
    terms = parse_query('"beach" + 0.5*"sunset" - "people"')
    assert [(t.weight, t.text) for t in terms] == [(1.0, "beach"), (0.5, "sunset"), (-1.0, "people")]


def test_hyphens_inside_words_are_not_operators():
    assert [t.text for t in parse_query("a t-shirt and a well-known place")] == ["a t-shirt and a well-known place"]
    assert [(t.weight, t.text) for t in parse_query("kids playing -crowd")] == [(1.0, "kids playing"), (-1.0, "crowd")]


def test_image_path_term(tmp_path):
    from conftest import make_photo

    p = make_photo(tmp_path / "cat photo.jpg")
    terms = parse_query(f'"{p}" + 0.3*"in the snow"')
    assert terms[0].image == str(p) and terms[0].text is None
    assert (terms[1].weight, terms[1].text) == (0.3, "in the snow")
    with pytest.raises(QueryError, match="not found"):
        parse_query(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("bad", ["", "   ", '"unclosed', "a + + b", "a +"])
def test_bad_queries_raise(bad):
    with pytest.raises(QueryError):
        parse_query(bad)


def test_combination_arithmetic():
    e = np.eye(3, dtype=np.float32)
    q = combine(np.array([1.0, 0.5, -1.0]), e)
    expected = np.array([1.0, 0.5, -1.0]) / np.linalg.norm([1.0, 0.5, -1.0])
    np.testing.assert_allclose(q, expected, rtol=1e-6)
    with pytest.raises(QueryError):
        combine(np.array([1.0, -1.0]), np.stack([e[0], e[0]]))


def test_query_vector_embeds_texts_in_one_batch(tmp_path):
    from conftest import make_photo

    p = make_photo(tmp_path / "x.png", fmt="PNG")
    calls = []

    def texts(ts):
        calls.append(list(ts))
        return np.stack([np.eye(4, dtype=np.float32)[i] for i in range(len(ts))])

    q = query_vector(parse_query(f'"a" - "b" + 2*"{p}"'), texts, lambda path: np.eye(4, dtype=np.float32)[3])
    assert calls == [["a", "b"]]
    np.testing.assert_allclose(q, np.array([1, -1, 0, 2]) / np.sqrt(6), rtol=1e-6)
