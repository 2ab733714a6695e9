"""Build question_pairs.csv from support_questions_by_issue.csv: every pair of questions, scored by what they ask.

5.0: the same issue in other words; 2.0: the same team, another issue; 0.0: different teams. The score is a
fact of how the questions were written (each was written by hand for one team and issue), not a judgement
made pair by pair. Every same-issue and same-team pair is kept, and as many different-team pairs drawn at
random as there are same-team ones. Run from the repository root: python examples/make_question_pairs.py"""

import itertools
import random
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def main() -> None:
    questions = pd.read_csv(HERE / "support_questions_by_issue.csv").to_dict("records")
    levels = {5.0: [], 2.0: [], 0.0: []}
    for a, b in itertools.combinations(questions, 2):
        score = 5.0 if a["issue"] == b["issue"] else 2.0 if a["team"] == b["team"] else 0.0
        levels[score].append((a, b))
    rng = random.Random(0)
    kept = len(levels[2.0])
    rows = []
    for score, pairs in levels.items():
        for a, b in rng.sample(pairs, min(kept, len(pairs))):
            first, second = (a, b) if rng.random() < 0.5 else (b, a)  # the order of a pair carries nothing
            rows.append(
                {
                    "sentence1": first["text"],
                    "sentence2": second["text"],
                    "score": score,
                    "same_question": "yes" if score == 5.0 else "no",
                }
            )
    rng.shuffle(rows)
    pd.DataFrame(rows).to_csv(HERE / "question_pairs.csv", index=False)


if __name__ == "__main__":
    main()
