"""A multi-turn agent chat, the example the encoding, loss and training tests share."""

from __future__ import annotations

from exsearch import prompts as P


def chat(question="Who founded the city?", n_passages=3, answer="John", filler="founded in 1820"):
    docs = P.documents_turn(
        [
            f"[{i}] Title: City {i} Content: The city was {filler} by John."
            for i in range(n_passages)
        ]
    )
    return [
        {"role": "system", "content": P.SYSTEM_PROMPT},
        {"role": "user", "content": P.question_turn(question)},
        {"role": "assistant", "content": P.action_turn(think="need the founder", query="founder")},
        {"role": "user", "content": docs},
        {"role": "assistant", "content": P.action_turn(record="John", think="more", query="john")},
        {"role": "user", "content": docs},
        {"role": "assistant", "content": P.action_turn(record="John founded it", think="done")},
        {"role": "user", "content": P.answer_request(question)},
        {"role": "assistant", "content": P.answer_turn(answer)},
    ]
