import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * Runs one OpenSearch node in this JVM with the modules the project uses on the classpath.
 *
 * <p>In 2.x, Node's protected constructor takes plugin classes from the classpath (the test
 * framework's MockNode uses it; 3.x changed it). Calling it directly skips the distribution's
 * Bootstrap, so there is no root check, SecurityManager or jar-hell check, and the node is real:
 * Netty HTTP, Lucene indices on disk.
 *
 * <p>Usage: java -cp 'libs/*:classes' EmbeddedOpenSearch HOME HTTP_PORT TRANSPORT_PORT
 */
public final class EmbeddedOpenSearch extends Node {
    private EmbeddedOpenSearch(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(environment, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: EmbeddedOpenSearch HOME HTTP_PORT TRANSPORT_PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]);
        Files.createDirectories(home.resolve("modules"));
        Files.createDirectories(home.resolve("plugins"));
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "clickstream-devstack")
            .put("node.name", "devstack")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[1])
            .put("transport.port", args[2])
            // A development disk may be nearly full; never turn indices read-only because of it.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            // A 512 MB heap under bulk load holds much garbage between collections; the
            // real-memory parent breaker would refuse requests (429) that would succeed.
            .put("indices.breaker.total.use_real_memory", false)
            .build();
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> "devstack");
        Node node = new EmbeddedOpenSearch(environment, List.of(
            org.opensearch.transport.Netty4Plugin.class,
            org.opensearch.analysis.common.CommonAnalysisPlugin.class,
            org.opensearch.painless.PainlessPlugin.class,
            org.opensearch.index.mapper.MapperExtrasPlugin.class,
            org.opensearch.geo.GeoModulePlugin.class));
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }, "devstack-shutdown"));
        node.start();
        System.out.println("devstack: OpenSearch node started on 127.0.0.1:" + args[1]);
        Thread.currentThread().join();
    }
}
