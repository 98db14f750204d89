"""The peer connection: an actor (``actor``) over rule modules, one per concern.

``detection``: the probe memory and what an observation decides (loss and latency windows,
checks of a suspect path); ``paths``: the facts a path decision records; ``retries``:
backoff, which retries are written, whether a punch is worth trying; ``inputs``: the
decision inputs a stop records and a start resumes from; ``facts``: the events every rule
builds alike. These read the state folded from the stream, the memory they are given, the
message, the time and the config, and never call each other, append or send.
"""

from actors.connection.actor import PeerConnectionActor

__all__ = ["PeerConnectionActor"]
