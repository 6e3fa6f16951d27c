"""`status`: the worst check of each service replica, from Consul's /v1/health/state/any."""

from clusterctl.status import _service_health


def test_worst_check_per_node_and_service_and_node_checks_ignored():
    checks = [
        {"Node": "n1", "CheckID": "serfHealth", "ServiceName": "", "Status": "passing"},
        {"Node": "n1", "ServiceName": "hello", "Status": "passing"},
        {"Node": "n1", "ServiceName": "hello", "Status": "warning"},
        {"Node": "n2", "ServiceName": "hello", "Status": "passing"},
        {"Node": "n2", "ServiceName": "api", "Status": "critical"},
        {"Node": "n2", "ServiceName": "api", "Status": "passing"},
        {"Node": "n3", "ServiceName": "odd", "Status": "maintenance"},
    ]
    assert _service_health(checks) == {
        ("n1", "hello"): "warning",
        ("n2", "hello"): "passing",
        ("n2", "api"): "critical",
        ("n3", "odd"): "critical",
    }
