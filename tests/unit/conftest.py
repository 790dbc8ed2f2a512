"""The fast tier: tests of pure logic. No servers, no store, no Ray, no sockets.

`make unit` runs this directory with sockets disabled; `make test` runs it with the rest.
"""
