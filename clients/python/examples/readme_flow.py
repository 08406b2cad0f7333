"""The README's main flow through gensearch.client (run: python readme_flow.py [ADDRESS])."""

import sys

from gensearch.client import Filter, Gensearch

books_jsonl = [
    {"title": "Dune", "body": "A desert planet and the spice melange.", "year": 1965},
    {"title": "Neuromancer", "body": "A hacker in a cyberpunk future.", "year": 1984},
    {"title": "Foundation", "body": "A galactic empire falls.", "year": 1951},
]
with Gensearch(sys.argv[1] if len(sys.argv) > 1 else None) as client:
    books = client.collections.create("Books", {"title": "text", "body": "text", "year": "int"})
    print("imported", books.data.import_(books_jsonl).imported)
    for hit in books.query.hybrid("old empire", filter=Filter.by_property("year") < 1970):
        print("hit:", hit["title"], hit["year"])
    found = books.generate.near_text(
        "science fiction", limit=3, single_prompt="Teaser for {title}: {body}",
        grouped_task="Which of these books is the oldest?",
    )  # fmt: skip
    for item in found.hits:
        print("teaser:", item.properties["title"], "->", item.generation)
    print("grouped:", found.grouped)
    chat = books.chat()
    first = chat.ask("Which book is set on a desert planet?")
    second = chat.ask("When was it written?")
    print("conversation:", chat.conversation_id, first.conversation_id == second.conversation_id)
    print("turn 2:", second.answer[:60].replace("\n", " "))
