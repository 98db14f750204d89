"""The README's demo: a real party on real WireGuard through real NATs, in the network lab."""
