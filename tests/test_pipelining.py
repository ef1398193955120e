"""Produce requests pipelined on one connection: answered in request order,
appended in request order, and any other request waits for them (and they
for it), as Kafka's one-request-at-a-time semantics promise."""

import kafka_raw
from conftest import create_topic, unique_topic, wait_until

PRODUCE, METADATA = 0, 3


def recv_answer(conn):
    r = kafka_raw.Reader(kafka_raw.recv_frame(conn.sock, 30))
    return r.int32(), r


def test_pipelined_produce_is_appended_and_answered_in_request_order(broker_factory):
    broker = broker_factory(sets={"connection.max.inflight.requests": 5})
    topic = unique_topic("pipe")
    create_topic(broker.bootstrap, topic, 2)
    requests = []
    with kafka_raw.Conn(broker.bootstrap, timeout=30) as conn:
        # 200 produce requests over two partitions, a Metadata request in the
        # middle, all written before reading any answer.
        for i in range(200):
            if i == 100:
                corr = conn.next_corr()
                conn.send_raw(kafka_raw.encode_request(METADATA, 1, corr, kafka_raw.array([topic], kafka_raw.string)))
                requests.append((corr, "metadata", None))
            partition = i % 2
            batch = kafka_raw.record_batch([(None, b"req-%05d-%d" % (i, j)) for j in range(3)])
            corr = conn.next_corr()
            body = kafka_raw.encode_produce_v3(topic, partition, batch, acks=-1)
            conn.send_raw(kafka_raw.encode_request(PRODUCE, 3, corr, body))
            requests.append((corr, "produce", partition))
        next_offset = {0: 0, 1: 0}
        for corr, kind, partition in requests:
            got, r = recv_answer(conn)
            assert got == corr, f"answer {got} came before {corr}: answers must keep request order"
            if kind == "metadata":
                md = kafka_raw.decode_metadata_v1(r)
                assert len(md["topics"][topic]["partitions"]) == 2
                continue
            answer = kafka_raw.decode_produce_v3(r)["partitions"][(topic, partition)]
            assert answer["error_code"] == 0
            # Each request's records follow the previous request's on its partition.
            assert answer["base_offset"] == next_offset[partition], (corr, answer)
            next_offset[partition] += 3
    assert next_offset == {0: 300, 1: 300}


def test_a_bad_request_in_a_pipeline_closes_after_the_earlier_answers(broker):
    topic = unique_topic("pipe-bad")
    create_topic(broker.bootstrap, topic, 1)
    with kafka_raw.Conn(broker.bootstrap, timeout=30) as conn:
        corrs = []
        for i in range(3):
            batch = kafka_raw.record_batch([(None, b"ok-%d" % i)])
            corr = conn.next_corr()
            conn.send_raw(kafka_raw.encode_request(PRODUCE, 3, corr, kafka_raw.encode_produce_v3(topic, 0, batch)))
            corrs.append(corr)
        # An unknown API key: Kafka closes the connection.
        conn.send_raw(kafka_raw.encode_request(9999 % 32768, 0, conn.next_corr()))
        for corr in corrs:
            got, r = recv_answer(conn)
            assert got == corr
            assert kafka_raw.decode_produce_v3(r)["partitions"][(topic, 0)]["error_code"] == 0
        assert kafka_raw.wait_closed(conn.sock, timeout=10)
    with kafka_raw.Conn(broker.bootstrap) as conn:
        assert conn.metadata([topic])["topics"][topic]["error_code"] == 0


def test_clients_that_pipeline_past_the_limit_and_leave_do_not_use_up_max_connections(broker_factory):
    # 10 connections per shard. Each client sends more Produce requests than
    # connection.max.inflight.requests (5) lets run, then closes without
    # reading: the broker must end every such connection (it once waited
    # forever to queue the 7th request, and leaked the connection's slot).
    broker = broker_factory(shards=2, sets={"max.connections": 20, "connection.max.inflight.requests": 5})
    topic = unique_topic("pipe-leave")
    create_topic(broker.bootstrap, topic, 2)
    batch = kafka_raw.record_batch([(None, b"x" * 100) for _ in range(10)])
    for i in range(100):
        conn = kafka_raw.Conn(broker.bootstrap, timeout=10)
        try:
            for _ in range(12):
                body = kafka_raw.encode_produce_v3(topic, i % 2, batch, acks=1)
                conn.send_raw(kafka_raw.encode_request(PRODUCE, 3, conn.next_corr(), body))
        except OSError:
            pass  # refused while earlier connections were still ending
        finally:
            conn.close()

    def twenty_clients_served():
        for _ in range(20):
            try:
                with kafka_raw.Conn(broker.bootstrap, timeout=10) as conn:
                    if conn.metadata([topic])["topics"][topic]["error_code"] != 0:
                        return False
            except (OSError, kafka_raw.ConnectionClosed):
                return False
        return True

    # Slots free as the connections end; leaked ones never would.
    wait_until(twenty_clients_served, 20, interval=0.5, what="20 new clients served after the pipelining clients left")
