// Spark's TreeNode.toJSON, the same document, without its cost.
//
// toJSON asks Scala's runtime reflection for each node's constructor parameter names, once
// per node and per nested product (about a millisecond each): most of a policy check's time.
// This class writes the same JSON (TreeNode.jsonValue / jsonFields / parseToJson, Spark 4)
// with those names looked up once per class. It is compiled in the driver's JVM by Janino,
// the compiler Spark itself ships (policies/planjson.py), and checked against toJSON by
// tests/test_policy_planjson.py on every query of the policy corpus.
import java.util.concurrent.ConcurrentHashMap;

import org.apache.spark.sql.catalyst.trees.TreeNode;

public class YushanPlanJson {
    private static final ConcurrentHashMap NAMES = new ConcurrentHashMap();

    /** The JSON of the tree rooted at ``root``, as TreeNode.toJSON writes it. */
    public String json(TreeNode root) {
        StringBuilder out = new StringBuilder(16384);
        treeJson(root, out);
        return out.toString();
    }

    private static String[] names(Class c) {
        String[] found = (String[]) NAMES.get(c);
        if (found == null) {
            scala.collection.Seq seq =
                org.apache.spark.sql.catalyst.ScalaReflection$.MODULE$.getConstructorParameterNames(c);
            found = new String[seq.length()];
            for (int i = 0; i < found.length; i++) {
                found[i] = (String) seq.apply(i);
            }
            NAMES.put(c, found);
        }
        return found;
    }

    // TreeNode.jsonValue: the nodes of the tree in pre-order, as one array.
    private void treeJson(TreeNode root, StringBuilder out) {
        out.append('[');
        collect(root, out, true);
        out.append(']');
    }

    private void collect(TreeNode node, StringBuilder out, boolean first) {
        if (!first) {
            out.append(',');
        }
        scala.collection.Seq children = node.children();
        out.append("{\"class\":");
        quote(node.getClass().getName(), out);
        out.append(",\"num-children\":").append(children.length());
        fields(node, children, out);
        out.append('}');
        for (int i = 0; i < children.length(); i++) {
            collect((TreeNode) children.apply(i), out, false);
        }
    }

    // TreeNode.jsonFields (Literal overrides it: its own fields are asked for).
    private void fields(TreeNode node, scala.collection.Seq children, StringBuilder out) {
        if (node instanceof org.apache.spark.sql.catalyst.expressions.Literal) {
            scala.collection.immutable.List own =
                ((org.apache.spark.sql.catalyst.expressions.Literal) node).jsonFields();
            for (int i = 0; i < own.length(); i++) {
                scala.Tuple2 field = (scala.Tuple2) own.apply(i);
                field((String) field._1(), field._2(), out, true);
            }
            return;
        }
        String[] names = names(node.getClass());
        scala.collection.Seq values = node.productIterator().toSeq();
        scala.collection.Seq other = node.otherCopyArgs();
        if (names.length != values.length() + other.length()) {
            throw new IllegalStateException(node.getClass().getName() + ": fields and values differ");
        }
        scala.collection.immutable.Set contains = node.containsChild();
        for (int i = 0; i < names.length; i++) {
            Object value = i < values.length() ? values.apply(i) : other.apply(i - values.length());
            if (value instanceof TreeNode && contains.contains(value)) {
                out.append(',');
                quote(names[i], out);
                out.append(':').append(children.indexOf(value));
            } else if (value instanceof scala.collection.immutable.Seq && allChildren((scala.collection.Seq) value, contains)) {
                scala.collection.Seq seq = (scala.collection.Seq) value;
                out.append(',');
                quote(names[i], out);
                out.append(":[");
                for (int j = 0; j < seq.length(); j++) {
                    if (j > 0) {
                        out.append(',');
                    }
                    out.append(children.indexOf(seq.apply(j)));
                }
                out.append(']');
            } else {
                int mark = out.length();
                out.append(',');
                quote(names[i], out);
                out.append(':');
                if (!value(value, out)) {
                    out.setLength(mark);  // JNothing: the field is left out
                }
            }
        }
    }

    private static boolean allChildren(scala.collection.Seq seq, scala.collection.immutable.Set contains) {
        for (int i = 0; i < seq.length(); i++) {
            if (!contains.contains(seq.apply(i))) {
                return false;
            }
        }
        return true;
    }

    // TreeNode.parseToJson; false for JNothing (an empty Option), which json4s leaves out.
    private boolean value(Object obj, StringBuilder out) {
        if (obj == null) {
            out.append("null");
        } else if (obj instanceof Boolean) {
            out.append(((Boolean) obj).booleanValue() ? "true" : "false");
        } else if (obj instanceof Byte || obj instanceof Short || obj instanceof Integer || obj instanceof Long) {
            out.append(((Number) obj).longValue());
        } else if (obj instanceof Float || obj instanceof Double) {
            out.append(Double.toString(((Number) obj).doubleValue()));
        } else if (obj instanceof scala.math.BigInt) {
            out.append(obj.toString());
        } else if (obj instanceof String) {
            quote((String) obj, out);
        } else if (obj instanceof java.util.UUID) {
            quote(obj.toString(), out);
        } else if (obj instanceof org.apache.spark.sql.types.DataType) {
            out.append(((org.apache.spark.sql.types.DataType) obj).json());
        } else if (obj instanceof org.apache.spark.sql.types.Metadata) {
            out.append("{}");  // Spark writes Metadata.empty (SPARK-17356)
        } else if (obj instanceof Class) {
            quote(((Class) obj).getName(), out);
        } else if (obj instanceof org.apache.spark.storage.StorageLevel) {
            org.apache.spark.storage.StorageLevel s = (org.apache.spark.storage.StorageLevel) obj;
            out.append("{\"useDisk\":").append(s.useDisk())
               .append(",\"useMemory\":").append(s.useMemory())
               .append(",\"useOffHeap\":").append(s.useOffHeap())
               .append(",\"deserialized\":").append(s.deserialized())
               .append(",\"replication\":").append(s.replication()).append('}');
        } else if (obj instanceof TreeNode) {
            treeJson((TreeNode) obj, out);
        } else if (obj instanceof scala.Option) {
            scala.Option option = (scala.Option) obj;
            if (option.isEmpty()) {
                return false;
            }
            return value(option.get(), out);
        } else if (obj instanceof scala.collection.immutable.Seq) {
            scala.collection.Seq seq = (scala.collection.Seq) obj;
            // Spark 4.3: a sequence of products (tree nodes, tuples of them, ...), of
            // partitionings or of data types is written element by element.
            if (all(seq, org.apache.spark.sql.catalyst.plans.physical.Partitioning.class)
                    || all(seq, org.apache.spark.sql.types.DataType.class) || all(seq, scala.Product.class)) {
                out.append('[');
                boolean first = true;
                for (int i = 0; i < seq.length(); i++) {
                    int mark = out.length();
                    if (!first) {
                        out.append(',');
                    }
                    if (value(seq.apply(i), out)) {
                        first = false;
                    } else {
                        out.setLength(mark);  // JNothing in an array is left out too
                    }
                }
                out.append(']');
            } else if (seq.length() > 0 && seq.apply(0) instanceof String) {
                quote(truncated(seq), out);
            } else {
                out.append("null");
            }
        } else if (obj instanceof scala.collection.immutable.Map) {
            out.append("null");
        } else if (obj.getClass().getName().endsWith("$")) {
            out.append("{\"object\":");
            quote(obj.getClass().getName(), out);
            out.append('}');
        } else if (obj instanceof scala.Product && convertible((scala.Product) obj)) {
            scala.Product p = (scala.Product) obj;
            String[] names = names(p.getClass());
            Object[] values = new Object[names.length];
            if (p.productArity() == names.length) {
                for (int i = 0; i < names.length; i++) {
                    values[i] = p.productElement(i);
                }
            } else {
                // As Spark does: the constructor's parameters read as fields by name. Any
                // failure here (Spark writes null) goes back to Spark's own toJSON.
                try {
                    for (int i = 0; i < names.length; i++) {
                        java.lang.reflect.Field field = p.getClass().getDeclaredField(names[i]);
                        field.setAccessible(true);
                        values[i] = field.get(p);
                    }
                } catch (ReflectiveOperationException e) {
                    throw new IllegalStateException(p.getClass().getName() + ": unreadable field");
                }
            }
            out.append("{\"product-class\":");
            quote(p.getClass().getName(), out);
            for (int i = 0; i < names.length; i++) {
                int mark = out.length();
                out.append(',');
                quote(names[i], out);
                out.append(':');
                if (!value(values[i], out)) {
                    out.setLength(mark);
                }
            }
            out.append('}');
        } else {
            out.append("null");
        }
        return true;
    }

    // Literal's own fields are json4s values.
    private void field(String name, Object jvalue, StringBuilder out, boolean comma) {
        int mark = out.length();
        if (comma) {
            out.append(',');
        }
        quote(name, out);
        out.append(':');
        if (!jvalue(jvalue, out)) {
            out.setLength(mark);
        }
    }

    private boolean jvalue(Object v, StringBuilder out) {
        if (v == null || v instanceof org.json4s.JNull$) {
            out.append("null");
        } else if (v instanceof org.json4s.JNothing$) {
            return false;
        } else if (v instanceof org.json4s.JString) {
            quote(((org.json4s.JString) v).s(), out);
        } else if (v instanceof org.json4s.JInt) {
            out.append(((org.json4s.JInt) v).num().toString());
        } else if (v instanceof org.json4s.JLong) {
            out.append(((org.json4s.JLong) v).num());
        } else if (v instanceof org.json4s.JDouble) {
            out.append(Double.toString(((org.json4s.JDouble) v).num()));
        } else if (v instanceof org.json4s.JDecimal) {
            out.append(((org.json4s.JDecimal) v).num().toString());
        } else if (v instanceof org.json4s.JBool) {
            out.append(((org.json4s.JBool) v).value() ? "true" : "false");
        } else if (v instanceof org.json4s.JArray) {
            scala.collection.immutable.List items = ((org.json4s.JArray) v).arr();
            out.append('[');
            boolean first = true;
            for (int i = 0; i < items.length(); i++) {
                int mark = out.length();
                if (!first) {
                    out.append(',');
                }
                if (jvalue(items.apply(i), out)) {
                    first = false;
                } else {
                    out.setLength(mark);
                }
            }
            out.append(']');
        } else if (v instanceof org.json4s.JObject) {
            scala.collection.immutable.List fields = ((org.json4s.JObject) v).obj();
            out.append('{');
            boolean first = true;
            for (int i = 0; i < fields.length(); i++) {
                scala.Tuple2 f = (scala.Tuple2) fields.apply(i);
                int before = out.length();
                field((String) f._1(), f._2(), out, !first);
                if (out.length() != before) {
                    first = false;
                }
            }
            out.append('}');
        } else {
            // A json4s value this class does not know (JSet, a later addition): refuse, and
            // the caller falls back to Spark's own toJSON.
            throw new IllegalStateException("unknown json value " + v.getClass().getName());
        }
        return true;
    }

    private static boolean all(scala.collection.Seq seq, Class c) {
        for (int i = 0; i < seq.length(); i++) {
            if (!c.isInstance(seq.apply(i))) {
                return false;
            }
        }
        return true;
    }

    // TreeNode.shouldConvertToJson (Spark 4.3): the products Spark writes field by field.
    private static boolean convertible(scala.Product p) {
        if (p instanceof org.apache.spark.sql.catalyst.expressions.ExprId
                || p instanceof org.apache.spark.sql.types.StructField
                || p instanceof org.apache.spark.sql.catalyst.CatalystIdentifier
                || p instanceof org.apache.spark.sql.catalyst.AliasIdentifier
                || p instanceof org.apache.spark.sql.catalyst.plans.JoinType
                || p instanceof org.apache.spark.sql.catalyst.catalog.BucketSpec
                || p instanceof org.apache.spark.sql.catalyst.catalog.CatalogTable
                || p instanceof org.apache.spark.sql.catalyst.plans.physical.Partitioning
                || p instanceof org.apache.spark.sql.catalyst.catalog.FunctionResource
                || p instanceof org.apache.spark.sql.catalyst.plans.physical.BroadcastMode
                || p instanceof org.apache.spark.sql.catalyst.catalog.CatalogTableType
                || p instanceof org.apache.spark.sql.catalyst.catalog.CatalogStorageFormat) {
            return true;
        }
        for (int i = 0; i < p.productArity(); i++) {  // a tuple of expressions, say
            if (p.productElement(i) instanceof TreeNode) {
                return true;
            }
        }
        return false;
    }

    // SparkStringUtils.truncatedString(seq, "[", ", ", "]", maxFields)
    private String truncated(scala.collection.Seq seq) {
        int maxFields = org.apache.spark.sql.internal.SQLConf.get().maxToStringFields();
        int n = seq.length();
        int shown = n > maxFields ? Math.max(0, maxFields - 1) : n;
        StringBuilder s = new StringBuilder("[");
        for (int i = 0; i < shown; i++) {
            if (i > 0) {
                s.append(", ");
            }
            s.append(String.valueOf(seq.apply(i)));
        }
        if (n > maxFields) {
            s.append(", ... ").append(n - shown).append(" more fields");
        }
        return s.append(']').toString();
    }

    private static void quote(String s, StringBuilder out) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == '\u2028' || c == '\u2029'
                            || Character.isSurrogate(c)) {
                        out.append(String.format("\\u%04x", new Object[] {Integer.valueOf(c)}));
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }
}
