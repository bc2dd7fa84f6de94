// Pure-JVM core: manifest contract, ring buffer, hop schedule, normalization, (1, C, T) layout,
// argmax/softmax, majority-vote smoothing, backend interface. No Android imports; Java 8 API.
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

dependencies {
    // org.json is part of the Android platform; on the JVM the same API comes from Android's own
    // org.json (Debian: libandroid-json-org-java; Maven Central: com.vaadin.external.google:android-json).
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("golden.dir", file("src/test/resources/golden").absolutePath)
}
