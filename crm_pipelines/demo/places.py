"""Real German, Austrian and Swiss towns with their postcode and dialling code.

Generated addresses must be plausible (PLZ matches town, dialling code matches
town) or matching tests learn nothing. One entry per Leitregion where possible,
so print-list rules over postcode areas have something to select.
"""

# (PLZ, town, dialling code without leading zero, country)
PLACES: tuple[tuple[str, str, str, str], ...] = (
    ("01067", "Dresden", "351", "DE"),
    ("02826", "Görlitz", "3581", "DE"),
    ("03046", "Cottbus", "355", "DE"),
    ("04109", "Leipzig", "341", "DE"),
    ("06108", "Halle (Saale)", "345", "DE"),
    ("07743", "Jena", "3641", "DE"),
    ("08056", "Zwickau", "375", "DE"),
    ("09111", "Chemnitz", "371", "DE"),
    ("10115", "Berlin", "30", "DE"),
    ("12043", "Berlin", "30", "DE"),
    ("13353", "Berlin", "30", "DE"),
    ("14467", "Potsdam", "331", "DE"),
    ("15230", "Frankfurt (Oder)", "335", "DE"),
    ("17489", "Greifswald", "3834", "DE"),
    ("18055", "Rostock", "381", "DE"),
    ("19053", "Schwerin", "385", "DE"),
    ("20095", "Hamburg", "40", "DE"),
    ("22767", "Hamburg", "40", "DE"),
    ("21335", "Lüneburg", "4131", "DE"),
    ("23552", "Lübeck", "451", "DE"),
    ("24103", "Kiel", "431", "DE"),
    ("25746", "Heide", "481", "DE"),
    ("26122", "Oldenburg", "441", "DE"),
    ("27568", "Bremerhaven", "471", "DE"),
    ("28195", "Bremen", "421", "DE"),
    ("29221", "Celle", "5141", "DE"),
    ("30159", "Hannover", "511", "DE"),
    ("31134", "Hildesheim", "5121", "DE"),
    ("32052", "Herford", "5221", "DE"),
    ("33602", "Bielefeld", "521", "DE"),
    ("34117", "Kassel", "561", "DE"),
    ("35037", "Marburg", "6421", "DE"),
    ("36037", "Fulda", "661", "DE"),
    ("37073", "Göttingen", "551", "DE"),
    ("38100", "Braunschweig", "531", "DE"),
    ("39104", "Magdeburg", "391", "DE"),
    ("40210", "Düsseldorf", "211", "DE"),
    ("41061", "Mönchengladbach", "2161", "DE"),
    ("42103", "Wuppertal", "202", "DE"),
    ("44135", "Dortmund", "231", "DE"),
    ("45127", "Essen", "201", "DE"),
    ("46045", "Oberhausen", "208", "DE"),
    ("47051", "Duisburg", "203", "DE"),
    ("48143", "Münster", "251", "DE"),
    ("49074", "Osnabrück", "541", "DE"),
    ("50667", "Köln", "221", "DE"),
    ("51373", "Leverkusen", "214", "DE"),
    ("52062", "Aachen", "241", "DE"),
    ("53111", "Bonn", "228", "DE"),
    ("54290", "Trier", "651", "DE"),
    ("55116", "Mainz", "6131", "DE"),
    ("56068", "Koblenz", "261", "DE"),
    ("57072", "Siegen", "271", "DE"),
    ("58095", "Hagen", "2331", "DE"),
    ("59065", "Hamm", "2381", "DE"),
    ("60311", "Frankfurt am Main", "69", "DE"),
    ("63065", "Offenbach am Main", "69", "DE"),
    ("64283", "Darmstadt", "6151", "DE"),
    ("65183", "Wiesbaden", "611", "DE"),
    ("66111", "Saarbrücken", "681", "DE"),
    ("67059", "Ludwigshafen am Rhein", "621", "DE"),
    ("68159", "Mannheim", "621", "DE"),
    ("69117", "Heidelberg", "6221", "DE"),
    ("70173", "Stuttgart", "711", "DE"),
    ("71634", "Ludwigsburg", "7141", "DE"),
    ("72070", "Tübingen", "7071", "DE"),
    ("73728", "Esslingen am Neckar", "711", "DE"),
    ("74072", "Heilbronn", "7131", "DE"),
    ("75172", "Pforzheim", "7231", "DE"),
    ("76133", "Karlsruhe", "721", "DE"),
    ("77652", "Offenburg", "781", "DE"),
    ("78462", "Konstanz", "7531", "DE"),
    ("79098", "Freiburg im Breisgau", "761", "DE"),
    ("80331", "München", "89", "DE"),
    ("81667", "München", "89", "DE"),
    ("82008", "Unterhaching", "89", "DE"),
    ("83022", "Rosenheim", "8031", "DE"),
    ("84028", "Landshut", "871", "DE"),
    ("85049", "Ingolstadt", "841", "DE"),
    ("86150", "Augsburg", "821", "DE"),
    ("87435", "Kempten (Allgäu)", "831", "DE"),
    ("88045", "Friedrichshafen", "7541", "DE"),
    ("89073", "Ulm", "731", "DE"),
    ("90402", "Nürnberg", "911", "DE"),
    ("91052", "Erlangen", "9131", "DE"),
    ("92637", "Weiden in der Oberpfalz", "961", "DE"),
    ("93047", "Regensburg", "941", "DE"),
    ("94032", "Passau", "851", "DE"),
    ("95444", "Bayreuth", "921", "DE"),
    ("96047", "Bamberg", "951", "DE"),
    ("97070", "Würzburg", "931", "DE"),
    ("98527", "Suhl", "3681", "DE"),
    ("99084", "Erfurt", "361", "DE"),
    ("99423", "Weimar", "3643", "DE"),
    ("1010", "Wien", "1", "AT"),
    ("4020", "Linz", "732", "AT"),
    ("5020", "Salzburg", "662", "AT"),
    ("6020", "Innsbruck", "512", "AT"),
    ("8010", "Graz", "316", "AT"),
    ("8001", "Zürich", "44", "CH"),
    ("3011", "Bern", "31", "CH"),
    ("4051", "Basel", "61", "CH"),
    ("9000", "St. Gallen", "71", "CH"),
)

COUNTRY_CALLING = {"DE": "49", "AT": "43", "CH": "41"}
COUNTRY_NAMES_DE = {"DE": "Deutschland", "AT": "Österreich", "CH": "Schweiz"}
COUNTRY_NAMES_EN = {"DE": "Germany", "AT": "Austria", "CH": "Switzerland"}
ERP_COUNTRY = {"DE": "D", "AT": "A", "CH": "CH"}

REGISTER_COURTS = (
    "Amtsgericht Dresden", "Amtsgericht Leipzig", "Amtsgericht Chemnitz", "Amtsgericht Charlottenburg",
    "Amtsgericht Hamburg", "Amtsgericht Hannover", "Amtsgericht Düsseldorf", "Amtsgericht Köln",
    "Amtsgericht Frankfurt am Main", "Amtsgericht Stuttgart", "Amtsgericht München", "Amtsgericht Nürnberg",
    "Amtsgericht Mannheim", "Amtsgericht Essen", "Amtsgericht Bremen", "Amtsgericht Jena",
)

INDUSTRIES = (
    "Maschinenbau", "Automobilzulieferer", "Elektrotechnik", "Metallverarbeitung", "Kunststofftechnik",
    "Medizintechnik", "Lebensmittelindustrie", "Chemie", "Logistik", "Baugewerbe", "Energieversorgung",
    "Anlagenbau", "Verpackungstechnik", "Holzverarbeitung", "Großhandel",
)

INDUSTRY_WORDS = (
    "Maschinenbau", "Antriebstechnik", "Präzisionsteile", "Hydraulik", "Fördertechnik", "Werkzeugbau",
    "Stahlbau", "Kunststofftechnik", "Elektronik", "Anlagenbau", "Automation", "Metallwaren", "Feinmechanik",
    "Verpackungssysteme", "Oberflächentechnik", "Dichtungstechnik", "Gießerei", "Umformtechnik",
)

REGION_ADJECTIVES = (
    "Sächsische", "Bayerische", "Rheinische", "Westfälische", "Hanseatische", "Schwäbische", "Fränkische",
    "Thüringer", "Märkische", "Pfälzer", "Badische", "Hessische", "Norddeutsche", "Allgäuer",
)

BRAND_PARTS = (
    ("Nova", "Inno", "Pro", "Tech", "Multi", "Euro", "Inter", "Opti", "Ultra", "Maxi", "Uni", "Poly", "Vario", "Trans"),
    ("tec", "tronic", "mat", "plan", "flex", "form", "line", "systems", "therm", "drive", "motion", "fix", "press"),
)

JOB_TITLES = (
    "Geschäftsführer", "Geschäftsführerin", "Leiter Einkauf", "Leiterin Einkauf", "Einkäufer", "Einkäuferin",
    "Technischer Leiter", "Produktionsleiter", "Werksleiter", "Konstrukteur", "Projektleiter", "Projektleiterin",
    "Leiter Instandhaltung", "Vertriebsleiter", "Qualitätsmanager", "Qualitätsmanagerin", "Betriebsleiter",
    "Sachbearbeiter Einkauf", "Assistentin der Geschäftsführung", "Leiterin Logistik", "Entwicklungsingenieur",
    "Prokurist", "Head of Operations", "Supply Chain Manager",
)

FREE_MAIL = ("gmx.de", "web.de", "t-online.de", "gmail.com", "outlook.de", "freenet.de", "posteo.de")

TRADE_FAIRS = ("Hannover Messe", "EMO Hannover", "AMB Stuttgart", "LogiMAT Stuttgart", "SPS Nürnberg",
               "automatica München", "Blechexpo Stuttgart", "FachPack Nürnberg")

ARTICLES = ("HP-200-S", "HP-400-L", "AT-15-KIT", "FT-BAND-2000", "DT-RING-50", "WB-FORM-7", "SR-ERS-12",
            "AU-STEU-3", "OT-BESCH-9", "VS-LINE-44", "GR-GUSS-3", "UM-PRESS-8")

WHITEPAPERS = ("wp-hydraulik-2026", "wp-predictive-maintenance", "wp-energieeffizienz", "wp-industrie-40",
               "wp-retrofit-leitfaden")
WEBINARS = ("web-retrofit-live", "web-iot-sensorik", "web-wartungsvertraege")
VIDEOS = ("demo-hp200", "demo-automation-suite", "demo-foerderband")
SITE = "https://www.example-maschinenbau.de"
PRODUCT_PAGES = ("/produkte/hydraulikpressen", "/produkte/antriebe", "/produkte/foerdertechnik",
                 "/produkte/automation", "/service/wartung", "/referenzen", "/karriere", "/blog/retrofit")
