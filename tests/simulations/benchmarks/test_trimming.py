from simulations.benchmarks.trimming import format_report, trim_report
from simulations.scenario import load_scenario


def test_the_trim_report_compares_each_teacher_with_its_students(tiny_benchmark):
    report = trim_report(tiny_benchmark / "continual", load_scenario("tiny"))
    assert list(report["tasks"]) == ["abdomen", "chest"]
    for rows in report["tasks"].values():
        teacher, federated = rows["teacher"], rows["student (federated)"]
        assert federated["parameters"] < teacher["parameters"]  # the student was trimmed
        assert federated["genotype"] != teacher["genotype"]
        assert len(rows) == 5 and all(0.0 <= row["dice"] <= 1.0 for row in rows.values())
    assert report["unified_parameters"] > 0 and report["ratio"] > 0
    assert format_report(report).count("| abdomen |") == 5
