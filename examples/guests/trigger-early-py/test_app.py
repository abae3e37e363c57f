"""The trigger's logic natively: python3 -m unittest (in this directory)."""

import unittest

from app import MARK, Config, decide


class DecideTest(unittest.TestCase):
    def test_fires_every_n_events(self):
        config = Config('{"every": 3}')
        fires = [decide(config, count, 1000, None)[0] for count in range(1, 10)]
        self.assertEqual(fires, [False, False, True] * 3)

    def test_asks_for_the_end_timer_once(self):
        config = Config('{"every": 3, "at_end": "timer"}')
        self.assertEqual(decide(config, 1, 1000, None), (False, MARK, 1000))
        self.assertEqual(decide(config, 2, 1000, MARK), (False, MARK, None))

    def test_a_window_the_watermark_passed_fires_at_once_without_a_timer(self):
        config = Config('{"every": 3, "at_end": "timer"}')
        self.assertEqual(decide(config, 1, 1000, None, 1000), (True, MARK, None))
        self.assertEqual(decide(config, 1, 1000, None, 999), (False, MARK, 1000))
        # With the native end fire, a late event fires natively.
        self.assertEqual(decide(Config('{"every": 3}'), 1, 1000, None, 1200)[0], False)

    def test_refuses_a_zero_every(self):
        with self.assertRaises(ValueError):
            Config('{"every": 0}')


if __name__ == "__main__":
    unittest.main()
