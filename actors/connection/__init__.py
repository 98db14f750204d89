"""The peer connection: a thin actor (``actor``) over rule modules, one per concern.

``detection``: the probe memory and what an observation decides (loss and latency windows,
checks of a suspect path); ``retries``: backoff, which retries are written, whether a
punch is worth trying; ``inputs``: the decision inputs a stop records and a start resumes
from; ``facts``: the events every rule builds alike. A rule reads the state folded from the
stream, the probe memory it is given, the message, the time and the config, and returns
what to append; it never calls another rule, appends or sends.
"""

from actors.connection.actor import PeerConnectionActor

__all__ = ["PeerConnectionActor"]
