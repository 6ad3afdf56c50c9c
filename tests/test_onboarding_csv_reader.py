"""CSV records across lines (onboarding.csv_reader): where a quoted field goes on."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onboarding.csv_reader import _ends_in_quotes, normalise_csv
from onboarding.report import FileRejected

CASES = [
    # (line, inside quotes at its start, inside quotes at its end)
    (b"a,b,c", False, False),
    (b'a,"b,c",d', False, False),
    (b'a,"b', False, True),
    (b'a,"b""', False, True),  # a doubled quote is text: still open
    (b'a,"b"""', False, False),
    (b'12" screen,3', False, False),  # a quote inside an unquoted field is text
    (b'12" screen,"x', False, True),
    (b'x,"y"z,w', False, False),  # text after a closing quote, up to the comma
    (b'end of field",1', True, False),
    (b'still, inside', True, True),
    (b'a ""quoted"" word', True, True),
    (b'",', True, False),
    (b'', True, True),
    (b'"', False, True),
    (b'""', False, False),
    (b'"a\r', False, True),
    (b'"a"\r', False, False),
]


@pytest.mark.parametrize("line,start,end", CASES)
def test_quote_state_at_the_end_of_a_line(line, start, end):
    assert _ends_in_quotes(line, start) is end


field = st.text(alphabet=st.sampled_from(list('ab,"\n\r 12')), max_size=8)


@given(st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=6))
def test_lines_join_back_into_the_records_a_csv_writer_wrote(records):
    """Whatever the fields hold, the lines of csv.writer's output join into its records."""
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\n").writerows(records)
    joined, current, inside = [], [], False
    for line in text.getvalue().encode().split(b"\n")[:-1]:
        current.append(line)
        inside = _ends_in_quotes(line, inside)
        if not inside:
            joined.append(b"\n".join(current))
            current = []
    assert not inside and not current

    def written(record: list[str]) -> bytes:
        one = io.StringIO(newline="")
        csv.writer(one, lineterminator="\n").writerow(record)
        return one.getvalue().encode()[:-1]

    assert joined == [written(r) for r in records]


def test_a_quote_never_closed_is_refused_naming_where_the_record_began(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,note\n1,"fine"\n2,"open\n3,x\n4,y\n')
    with pytest.raises(FileRejected) as caught:
        normalise_csv(src, tmp_path / "out.csv")
    assert caught.value.result.check == "well_formed" and caught.value.result.first_rows == (3,)


def test_a_long_record_over_many_short_lines_is_refused(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,note\n1,"' + b"x\n" * 400 + b'"\n')
    with pytest.raises(FileRejected) as caught:
        normalise_csv(src, tmp_path / "out.csv", max_line_bytes=500)
    assert caught.value.result.check == "line_length" and caught.value.result.first_rows == (2,)
