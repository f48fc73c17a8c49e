"""Tooling around the node graph, apart from the nodes: the one `GraphRunner` that starts a graph
(`launcher`: `metasym launch`), the flight demo with its recorder and analysis (`flight`:
`metasym flight`), and the benchmarks that run graphs (`bench_ros`: `metasym bench ros`,
`bench_flight`: `metasym bench flight`). No node imports it; nothing else in `metasym_ros` starts
processes.
"""
