package dev.imutune.demo

import android.app.Activity
import android.hardware.Sensor
import android.hardware.SensorEvent
import android.hardware.SensorEventListener
import android.hardware.SensorManager
import android.os.Bundle
import android.os.Handler
import android.os.HandlerThread
import android.util.Log
import android.widget.TextView
import dev.imutune.core.Backend
import dev.imutune.core.Manifest
import dev.imutune.core.SensorFusion
import dev.imutune.core.WindowPipeline

/**
 * Live activity recognition with an `imutune export` (assets/manifest.json + assets/model.onnx or
 * assets/model.pte, by flavor).
 *
 * Accelerometer and gyroscope are registered at the manifest's sample_rate_hz on a background
 * HandlerThread. Fusion rule (dev.imutune.core.SensorFusion): sample-and-hold of the latest gyroscope
 * reading; every accelerometer event emits one sample in the manifest's channel order, converted from
 * Android's m/s^2 and rad/s to the manifest's units (m/s^2 -> g when the manifest says g). The loop
 * (dev.imutune.core.WindowPipeline) is the one tested on the host against imutune's Python runtime.
 * Each window's label, confidence and model latency are shown and logged (adb logcat -s imutune).
 */
class MainActivity : Activity(), SensorEventListener {
    private lateinit var text: TextView
    private lateinit var sensorManager: SensorManager
    private var manifest: Manifest? = null
    private var backend: Backend? = null
    private var pipeline: WindowPipeline? = null
    private var fusion: SensorFusion? = null
    private var thread: HandlerThread? = null
    private lateinit var sample: FloatArray

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        text = TextView(this).apply {
            textSize = 22f
            setPadding(40, 40, 40, 40)
        }
        setContentView(text)
        sensorManager = getSystemService(SENSOR_SERVICE) as SensorManager
        try {
            val m = assets.open("manifest.json").use { Manifest.load(it, "assets/manifest.json") }
            val model = BackendFactory.MODEL_FILE
            assets.open(model).use { m.verifyArtifact(it, model, "assets/$model") }   // SHA-256 contract check
            val b = BackendFactory.create(this, m, model)
            manifest = m
            backend = b
            pipeline = WindowPipeline(m, b, SMOOTHING_K)
            sample = FloatArray(m.numChannels())
            show("${b.name()}: ${m.describe()}\nwaiting for the first window")
            Log.i(TAG, "loaded $model with ${b.name()}: ${m.describe()}")
        } catch (e: Exception) {
            show("cannot start: ${e.message}")
            Log.e(TAG, "contract or load error", e)
        }
    }

    override fun onResume() {
        super.onResume()
        val m = manifest ?: return
        val accel = sensorManager.getDefaultSensor(Sensor.TYPE_ACCELEROMETER)
        val gyro = sensorManager.getDefaultSensor(Sensor.TYPE_GYROSCOPE)
        if (accel == null || gyro == null) {
            show("this device lacks an accelerometer or a gyroscope")
            return
        }
        // Units the demo's training data used when the manifest declares none (the embedded watch data: g, rad/s).
        val fallback = m.channels.map { if (it.startsWith("acc")) "g" else "rad/s" }
        try {
            fusion = SensorFusion(m, fallback)
        } catch (e: IllegalArgumentException) {
            show("cannot start: ${e.message}")
            return
        }
        val t = HandlerThread("imutune-sensors").apply { start() }
        thread = t
        val handler = Handler(t.looper)
        val periodUs = (1_000_000.0 / m.sampleRateHz).toInt()
        sensorManager.registerListener(this, accel, periodUs, handler)
        sensorManager.registerListener(this, gyro, periodUs, handler)
        Log.i(TAG, "sensors registered at ${m.sampleRateHz} Hz ($periodUs us)")
    }

    override fun onPause() {
        super.onPause()
        sensorManager.unregisterListener(this)
        thread?.let { t ->
            Handler(t.looper).post { pipeline?.reset() }   // a new stream after resume
            t.quitSafely()
        }
        thread = null
    }

    override fun onDestroy() {
        super.onDestroy()
        backend?.close()
    }

    // Runs on the HandlerThread: the only thread touching fusion and pipeline.
    override fun onSensorChanged(event: SensorEvent) {
        val f = fusion ?: return
        val p = pipeline ?: return
        when (event.sensor.type) {
            Sensor.TYPE_GYROSCOPE -> f.onGyroscope(event.values)
            Sensor.TYPE_ACCELEROMETER -> {
                if (!f.onAccelerometer(event.values, sample)) return
                val r = try {
                    p.push(sample)
                } catch (e: Exception) {
                    Log.e(TAG, "inference failed", e)
                    show("inference failed: ${e.message}")
                    null
                } ?: return
                val line = String.format(
                    "%s  %.0f%%  (smoothed %s)  %.2f ms",
                    r.label, 100 * r.confidence, r.smoothedLabel, r.latencyMs,
                )
                Log.i(TAG, "window end ${r.windowEnd}: $line")
                show("$line\nwindow ${p.windows()} · ${backend?.name()}")
            }
        }
    }

    override fun onAccuracyChanged(sensor: Sensor?, accuracy: Int) {}

    private fun show(s: String) = runOnUiThread { text.text = s }

    companion object {
        const val TAG = "imutune"
        const val SMOOTHING_K = 3
    }
}
