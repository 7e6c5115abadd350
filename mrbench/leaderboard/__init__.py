"""The MRBench leaderboard: verified submissions (:mod:`.verify`, :mod:`.store`) and its views (:mod:`.render`)."""
