"""The documents of the example task shakespeare_next_line.yaml, made from the play's lines as the harness reads them
(one line of text each): every pair of consecutive lines of verse, the second among three distractors from far away
in the play. Deterministic: the same documents on every machine."""

EXAMPLES = 200  # the first ones of the play
MIN_CHARS = 24  # lines of verse, not stage directions, names or blanks
DISTRACTOR_OFFSETS = (101, 211, 307)  # lines this far on (in the list of verse lines) are not the next one


def process_docs(dataset):
    import datasets

    lines = [text.strip() for text in dataset["text"]]
    verse = [i for i, line in enumerate(lines) if len(line) >= MIN_CHARS]
    docs = []
    for n, (i, j) in enumerate(zip(verse, verse[1:])):
        if j != i + 1:
            continue  # the next line of the play is not verse
        others = [lines[verse[(n + 1 + offset) % len(verse)]] for offset in DISTRACTOR_OFFSETS]
        label = len(docs) % 4
        choices = others[:label] + [lines[j]] + others[label:]
        docs.append({"context": lines[i], "choices": choices, "label": label})
        if len(docs) == EXAMPLES:
            break
    return datasets.Dataset.from_list(docs)
