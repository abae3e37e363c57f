"""The aggregator's logic natively: python3 -m unittest (in this directory)."""

import unittest

from app import Config, Report, add, merge


class ReportTest(unittest.TestCase):
    def test_counts_and_keeps_the_first_and_last_by_time(self):
        config = Config("{}")
        acc = add(config, None, [(20, b"b"), (10, b"a")])
        acc = add(config, acc, [(30, b"c"), (30, b"d")])
        report = Report.decode(acc)
        self.assertEqual(report.line(b"k", 0, 100), "k,0,100,4,a,d")

    def test_merges_in_window_order(self):
        config = Config("{}")
        early = add(config, None, [(1, b"x"), (2, b"y")])
        late = add(config, None, [(5, b"z")])
        self.assertEqual(Report.decode(merge([early, late])).line(None, 0, 9), ",0,9,3,x,z")

    def test_refuses_what_it_is_told_to(self):
        with self.assertRaises(ValueError):
            add(Config('{"fail_on": "bad"}'), None, [(1, b"bad")])
        with self.assertRaises(ValueError):
            Config('{"bogus": 1}')
        with self.assertRaises(ValueError):
            Report.decode(b"\x01\x02")


if __name__ == "__main__":
    unittest.main()
