package dev.imutune.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;

import org.junit.Test;

/** Ring buffer, hop schedule, layout, argmax/softmax, smoothing ties and sensor fusion. */
public class LoopTest {
    @Test
    public void ringBufferKeepsTheLatestWindowOldestFirst() {
        RingBuffer r = new RingBuffer(3, 2);
        assertFalse(r.isFull());
        for (int i = 0; i < 5; i++) r.push(new float[] {i, 10 + i});
        assertTrue(r.isFull());
        float[] out = new float[6];
        r.copyWindow(out);
        assertArrayEquals(new float[] {2, 12, 3, 13, 4, 14}, out, 0f);
        assertEquals(3f, r.get(1, 0), 0f);
        assertEquals(5, r.totalPushed());
    }

    @Test(expected = IllegalStateException.class)
    public void ringBufferRefusesAPartialWindow() {
        RingBuffer r = new RingBuffer(3, 1);
        r.push(new float[] {1});
        r.copyWindow(new float[3]);
    }

    @Test
    public void hopScheduleFiresAtTThenEveryHop() {
        HopSchedule h = new HopSchedule(4, 3);
        StringBuilder ends = new StringBuilder();
        for (int i = 0; i < 14; i++) if (h.onSample()) ends.append(h.samples()).append(' ');
        assertEquals("4 7 10 13 ", ends.toString());   // 1 + (14 - 4) / 3 = 4 windows
        HopSchedule wide = new HopSchedule(2, 5);         // hop > window: samples in between are skipped
        ends.setLength(0);
        for (int i = 0; i < 13; i++) if (wide.onSample()) ends.append(wide.samples()).append(' ');
        assertEquals("2 7 12 ", ends.toString());
    }

    @Test
    public void argmaxTakesTheFirstMaximumAndSoftmaxSumsToOne() {
        assertEquals(1, Classify.argmax(new float[] {0f, 2f, 2f, -1f}));
        double[] p = Classify.softmax(new float[] {1000f, 1000f});
        assertEquals(0.5, p[0], 1e-12);
        assertEquals(1.0, Arrays.stream(Classify.softmax(new float[] {1f, 2f, 3f})).sum(), 1e-12);
    }

    @Test
    public void smootherTiesGoToTheCurrentClassThenTheLowerIndex() {
        MajoritySmoother s = new MajoritySmoother(4, 3);
        assertEquals(2, s.push(2));
        assertEquals(1, s.push(1));    // 1 vote each: the current window's class
        assertEquals(1, s.push(1));    // 2 votes for 1
        assertEquals(2, s.push(2));    // [2, 1, 1, 2]: a 2 - 2 tie goes to the current window's class
        MajoritySmoother t = new MajoritySmoother(5, 3);
        int last = -1;
        for (int p : new int[] {0, 1, 1, 0, 2}) last = t.push(p);
        assertEquals(0, last);         // 0 and 1 tie with 2 votes, neither is current: the lower index
        t.reset();
        assertEquals(2, t.push(2));    // a new segment forgets the old votes
    }

    @Test
    public void sensorFusionHoldsTheLatestGyroAndConvertsUnits() throws Exception {
        Manifest m = ManifestContractTest.manifestWith("\"units\": [\"g\", \"g\", \"g\", \"rad/s\", \"deg/s\", \"rad/s\"]");
        SensorFusion f = new SensorFusion(m, null);
        float[] out = new float[6];
        assertFalse("no gyro yet", f.onAccelerometer(new float[] {9.80665f, 0f, -9.80665f}, out));
        assertEquals(1, f.dropped());
        f.onGyroscope(new float[] {0.1f, (float) Math.PI, 0.3f});
        assertTrue(f.onAccelerometer(new float[] {9.80665f, 0f, -9.80665f}, out));
        assertArrayEquals(new float[] {1f, 0f, -1f, 0.1f, 180f, 0.3f}, out, 1e-5f);
        assertTrue(f.onAccelerometer(new float[] {0f, 19.6133f, 0f}, out));   // gyro held
        assertArrayEquals(new float[] {0f, 2f, 0f, 0.1f, 180f, 0.3f}, out, 1e-5f);
    }

    @Test
    public void undeclaredUnitsUseTheFallback() throws Exception {
        Manifest m = ManifestContractTest.manifestWith(null);   // the demo export: units null
        assertNull(m.units);
        SensorFusion f = new SensorFusion(m, Arrays.asList("g", "g", "g", "rad/s", "rad/s", "rad/s"));
        assertEquals(1 / 9.80665f, f.scales()[0], 1e-9f);
        assertEquals(1f, f.scales()[3], 0f);
    }
}
