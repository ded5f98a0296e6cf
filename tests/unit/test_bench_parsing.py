# ruff: noqa: E501  (the h2load output below is captured verbatim)
"""bench.h2load, bench.envoy, bench.sidecar, bench.procstat: parsing of real captured output."""

from __future__ import annotations

import struct

import pytest

from bench import envoy, h2load, procstat, sidecar

# h2load nghttp2/1.52.0, -c1 -m1 -D 3 --warm-up-time 1 against a bench backend
WITH_WARM_UP = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 3s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Application protocol: h2c
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 4.00s, 2951.00 req/s, 472.65KB/s
requests: 8853 total, 8853 started, 8853 done, 8853 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 8853 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.38MB (1451994) total, 34.15KB (34968) headers (space savings 96.29%), 1.16MB (1221255) data
                     min         max         mean         sd        +/- sd
time for request:      166us      4.89ms       331us        85us    85.82%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    2950.91     2950.91     2950.91        0.00   100.00%
"""

# -c4 -m16 -D 3: 64 streams in flight when the duration ran out (started - done)
SIXTY_FOUR_STREAMS = """\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Warm-up started for thread #0.
progress: 25% of clients started
progress: 50% of clients started
progress: 75% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.00s, 9324.67 req/s, 1.44MB/s
requests: 27974 total, 28038 started, 27974 done, 27974 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 27974 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 4.33MB (4540301) total, 82.25KB (84222) headers (space savings 96.28%), 2.80MB (2937270) data
                     min         max         mean         sd        +/- sd
time for request:      155us     13.83ms      6.85ms      1.15ms    92.98%
time for connect:       45us        94us        73us        21us    75.00%
time to 1st byte:     1.30ms      8.84ms      5.06ms      3.21ms    50.00%
req/s           :    2329.22     2332.56     2331.05        1.48    50.00%
"""

# nothing listening on the port
REFUSED = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"""


def test_parse_run_with_warm_up() -> None:
    s = h2load.parse_output(WITH_WARM_UP)
    assert s.duration_s == 3.0  # main phase only; "finished in 4.00s" includes the warm-up
    assert s.rps == 2951.00
    assert (s.total, s.started, s.done, s.succeeded) == (8853, 8853, 8853, 8853)
    assert (s.failed, s.errored, s.timeout, s.status_other) == (0, 0, 0, 0)
    assert s.status_2xx == 8853
    assert s.traffic_bytes == 1451994
    assert s.request_min_us == 166.0
    assert s.request_max_us == pytest.approx(4890.0)
    assert s.request_mean_us == 331.0
    assert s.in_flight_at_cutoff == 0
    assert s.clean


def test_parse_counts_streams_in_flight_at_cutoff() -> None:
    s = h2load.parse_output(SIXTY_FOUR_STREAMS)
    assert s.duration_s == 3.0
    assert s.succeeded == 27974
    assert s.in_flight_at_cutoff == 64
    assert s.request_mean_us == pytest.approx(6850.0)
    assert s.clean


def test_refused_connection_is_not_clean() -> None:
    s = h2load.parse_output(REFUSED)
    assert s.succeeded == 0
    assert not s.clean


def test_parse_rejects_truncated_output() -> None:
    with pytest.raises(h2load.ParseError):
        h2load.parse_output(WITH_WARM_UP.split("requests:")[0])


@pytest.mark.parametrize(
    ("text", "micros"),
    [("166us", 166.0), ("4.89ms", 4890.0), ("1.5s", 1_500_000.0), ("0us", 0.0)],
)
def test_parse_duration(text: str, micros: float) -> None:
    assert h2load.parse_duration_us(text) == pytest.approx(micros)


def test_parse_log_keeps_2xx_durations() -> None:
    lines = [
        "1795289640776261\t200\t232\n",
        "1795289640776542\t503\t252\n",
        "garbage\n",
        "1\t200\t7",
    ]
    assert h2load.parse_log(lines) == [232.0, 7.0]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 127, 128, 129, 16384, 65536, 1 << 20])
def test_grpc_message_has_exact_size_and_frame_prefix(size: int) -> None:
    message = h2load.grpc_message(size)
    assert len(message) == size
    frame = h2load.grpc_frame(message)
    assert frame[0] == 0
    assert struct.unpack(">I", frame[1:5])[0] == size
    assert frame[5:] == message


def test_grpc_message_is_a_protobuf_bytes_field() -> None:
    message = h2load.grpc_message(100)
    assert message[:2] == bytes([0x0A, 98])  # field 1, wire type 2, length 98


def test_command_uses_grpc_headers_and_milliseconds(tmp_path: object) -> None:
    from pathlib import Path

    argv = h2load.command(
        "h2load",
        "http://127.0.0.1:1/bench.Echo/Unary",
        data_file=Path("/d"),
        clients=4,
        streams=16,
        duration_s=1.5,
        warm_up_s=0.5,
        log_file=Path("/l"),
    )
    assert "--header=content-type: application/grpc" in argv
    assert "--header=te: trailers" in argv
    assert "--duration=1500ms" in argv
    assert "--warm-up-time=500ms" in argv
    assert "--clients=4" in argv and "--max-concurrent-streams=16" in argv
    assert argv[-1] == "http://127.0.0.1:1/bench.Echo/Unary"


# Envoy 1.40 admin /listeners?format=json
LISTENERS = """{
 "listener_statuses": [
  {
   "name": "outbound",
   "local_address": {
    "socket_address": {
     "address": "127.0.0.1",
     "port_value": 34479
    }
   }
  }
 ]
}"""


def test_envoy_listener_port() -> None:
    assert envoy.listener_port(LISTENERS) == 34479
    with pytest.raises(ValueError):
        envoy.listener_port(LISTENERS, name="inbound")
    with pytest.raises(ValueError):
        envoy.listener_port('{"listener_statuses": []}')


def test_envoy_config_lists_every_backend_round_robin_over_http2() -> None:
    doc = envoy.config([("127.0.0.1", 1), ("127.0.0.1", 2)])
    cluster = doc["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [1, 2]
    options = cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in str(options)


def test_sidecar_listening_line() -> None:
    log = "2026-01-01 INFO sidecar: starting\nlistening admin=127.0.0.1:9 outbound=127.0.0.1:4321\n"
    assert sidecar.parse_listening(log) == ("127.0.0.1", 4321)
    assert sidecar.parse_listening("listening admin=127.0.0.1:9\n") is None


def test_sidecar_config_shape() -> None:
    doc = sidecar.config([("127.0.0.1", 1), ("127.0.0.1", 2)], workers=2, outbound_port=7)
    assert doc["clusters"]["backend"]["target"] == "static:///127.0.0.1:1,127.0.0.1:2"
    assert doc["outbound"]["listen"] == "127.0.0.1:7"
    assert doc["outbound"]["routes"] == [{"prefix": "/", "cluster": "backend"}]
    assert doc["workers"] == 2
    assert "workers" not in sidecar.config([("127.0.0.1", 1)])


# /proc/<pid>/stat of a process whose name has a space and a parenthesis
STAT = (
    "12116 (we ird) R 12070 12070 2759 0 -1 4194304 103 0 0 0 57 31 0 0 20 0 1 0 78875 "
    "2998272 381 18446744073709551615 93982745174016"
)


def test_parse_stat_counts_fields_after_the_command_name() -> None:
    assert procstat.parse_stat(STAT.replace("we ird", "we) ird")) == (12070, 57, 31)


def test_parse_vmrss() -> None:
    status = "Name:\tenvoy\nVmPeak:\t  999 kB\nVmRSS:\t   66012 kB\nThreads:\t12\n"
    assert procstat.parse_vmrss_kib(status) == 66012
    assert procstat.parse_vmrss_kib("Name:\tkthreadd\n") == 0
