"""The chat/1 server: the domain (hub), the wire side (protocol), and the service.

Layers, inside out: L{hub} decides (no sockets, no bytes, time injected);
L{protocol} turns one connection's bytes into hub calls and hub events into lines;
L{service} reads the options and builds the service tree that twistd runs.
"""
