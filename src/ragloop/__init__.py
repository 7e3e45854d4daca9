"""ragloop: a RAG assistant that records its own traffic and turns it into a better model.

The package reads as the loop: ingest -> retrieval -> generation -> feedback -> curation -> datasets ->
training -> evaluation -> monitoring, over ``store`` (every record) and ``config``. ``serve`` and ``cli``
are the two doors onto those stages.
"""

__version__ = "0.1.0"
