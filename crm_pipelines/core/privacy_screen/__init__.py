"""The privacy screen every load passes: identity hashing (``identity``) and the suppression list
(``suppression``). Below ``sources`` because ingest checks it; the duties that act on people
(erasure, access, retention) are in ``privacy``, above ``sources``, because they re-read deliveries."""
