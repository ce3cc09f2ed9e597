"""Everything that speaks HAProxy: the config it reads (`config`, `templates/`), its sockets
(`sockets`: the master CLI and the Runtime API) and its binary (`binary`: `haproxy -c` and the
managed child). Supporting another HAProxy release is a change inside this package."""
