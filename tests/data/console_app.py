"""Source lines for tests/test_console.py: line 6 is a block's line, line 11 its caller."""


def build_index(rows):
    index = {}
    index.setdefault(rows[0]["key"], []).extend(rows)
    index.update((row["key"], [row]) for row in rows[1:])
    return index


async def handle(request):
    return build_index(await request.rows())
