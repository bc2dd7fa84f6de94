package dev.imutune.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Fuses Android accelerometer and gyroscope events into samples in the manifest's channel order and units.
 *
 * <p>Rule: <b>sample-and-hold of the latest gyroscope reading.</b> The accelerometer drives the sample
 * clock (both sensors are registered at the manifest's {@code sample_rate_hz}); every accelerometer event
 * emits one sample made of that event's three axes and the most recent gyroscope event's three axes.
 * Accelerometer events before the first gyroscope event are dropped (counted in {@link #dropped()}) when
 * the manifest needs a gyroscope channel. No resampling is done: the phone must deliver at the manifest rate.
 *
 * <p>Channels are mapped by name: {@code acc_x|acc_y|acc_z} (also {@code accel_*}) come from the
 * accelerometer's values[0..2], {@code gyr_*} / {@code gyro_*} from the gyroscope's. Units: Android reports
 * m/s^2 and rad/s; a channel declared in {@code g} is divided by 9.80665, one in {@code deg/s} multiplied by
 * 180 / pi. When the manifest declares no unit for a channel, {@code fallbackUnits} (one per channel, or null)
 * says which unit the model was trained in (the embedded watch data: g and rad/s).
 */
public final class SensorFusion {
    /** Standard gravity, m/s^2 per g. */
    public static final double STANDARD_GRAVITY = 9.80665;
    public static final int ACCEL = 0;
    public static final int GYRO = 1;

    private final int[] sensor;   // per manifest channel: ACCEL or GYRO
    private final int[] axis;     // per manifest channel: 0, 1, 2
    private final float[] scale;  // Android unit -> manifest unit
    private final boolean needsGyro;
    private final float[] gyro = new float[3];
    private boolean haveGyro;
    private long dropped;

    public SensorFusion(Manifest manifest, List<String> fallbackUnits) {
        int n = manifest.numChannels();
        if (fallbackUnits != null && fallbackUnits.size() != n) {
            throw new IllegalArgumentException("fallbackUnits has " + fallbackUnits.size() + " entries; the manifest has "
                    + n + " channels " + manifest.channels);
        }
        sensor = new int[n];
        axis = new int[n];
        scale = new float[n];
        boolean gyroUsed = false;
        List<String> unmapped = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            String name = manifest.channels.get(i).toLowerCase(java.util.Locale.ROOT);
            int s = name.startsWith("acc") ? ACCEL : name.startsWith("gyr") ? GYRO : -1;
            int a = name.endsWith("_x") ? 0 : name.endsWith("_y") ? 1 : name.endsWith("_z") ? 2 : -1;
            if (s < 0 || a < 0) {
                unmapped.add(manifest.channels.get(i));
                continue;
            }
            sensor[i] = s;
            axis[i] = a;
            gyroUsed |= s == GYRO;
        }
        if (!unmapped.isEmpty()) {
            throw new ContractException("manifest channels " + unmapped + " have no Android sensor source; this app "
                    + "provides " + Arrays.asList("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
                    + " (accelerometer, gyroscope); the manifest expects " + manifest.channels);
        }
        for (int i = 0; i < n; i++) {
            String unit = manifest.units != null ? manifest.units.get(i) : null;
            if (unit == null && fallbackUnits != null) unit = fallbackUnits.get(i);
            scale[i] = (float) factor(sensor[i], unit, manifest.channels.get(i));
        }
        needsGyro = gyroUsed;
    }

    private static double factor(int s, String unit, String channel) {
        if (unit == null) {
            throw new ContractException("channel '" + channel + "' has no unit in the manifest and no fallback unit; "
                    + "expected " + (s == ACCEL ? "'g' or 'm/s^2'" : "'rad/s' or 'deg/s'"));
        }
        if (s == ACCEL) {
            if (unit.equals("m/s^2")) return 1.0;
            if (unit.equals("g")) return 1.0 / STANDARD_GRAVITY;
        } else {
            if (unit.equals("rad/s")) return 1.0;
            if (unit.equals("deg/s")) return 180.0 / Math.PI;
        }
        throw new ContractException("channel '" + channel + "' is in unit '" + unit + "'; this app converts the "
                + (s == ACCEL ? "accelerometer's m/s^2 to 'g' or 'm/s^2'" : "gyroscope's rad/s to 'rad/s' or 'deg/s'"));
    }

    /** A gyroscope event (rad/s, Android axes): held until the next one. */
    public void onGyroscope(float[] values) {
        gyro[0] = values[0];
        gyro[1] = values[1];
        gyro[2] = values[2];
        haveGyro = true;
    }

    /**
     * An accelerometer event (m/s^2): writes one fused sample (manifest order and units) into {@code out}
     * and returns true, or returns false while no gyroscope reading is held yet.
     */
    public boolean onAccelerometer(float[] values, float[] out) {
        if (needsGyro && !haveGyro) {
            dropped++;
            return false;
        }
        for (int i = 0; i < sensor.length; i++) {
            float v = sensor[i] == ACCEL ? values[axis[i]] : gyro[axis[i]];
            out[i] = v * scale[i];
        }
        return true;
    }

    /** Accelerometer events dropped before the first gyroscope event. */
    public long dropped() { return dropped; }

    /** Android unit -> manifest unit factor per channel. */
    public float[] scales() { return scale.clone(); }
}
